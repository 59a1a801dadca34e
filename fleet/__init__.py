"""Fleet inventory: sites, devices with their hardware and runtimes, groups, device credentials."""

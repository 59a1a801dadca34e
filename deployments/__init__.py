"""Deployments and staged canary rollouts (filled by the rollouts issue)."""

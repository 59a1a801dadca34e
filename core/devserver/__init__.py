"""`manage.py runserver` on ASGI (Daphne): the development server serves websockets too.

Listed first in INSTALLED_APPS so its `runserver` replaces Django's and staticfiles' WSGI one.
"""

"""The aiohttp server, HTTP only: the app, its middleware, the routes and the widget and console (static/)."""

"""Atlas HTTP layer on Faust's embedded aiohttp server, and the PostgreSQL intake side."""

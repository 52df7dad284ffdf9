"""The management REST API: Supavisor's routes under /api, bearer-JWT protected."""

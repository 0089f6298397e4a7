from tests.router.conftest import start_router

__all__ = ["start_router"]

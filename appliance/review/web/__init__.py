"""The review web application (Starlette under uvicorn); templates and assets ship in the wheel."""

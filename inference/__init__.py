"""Worker protocol and registry, router, the llama.cpp worker, checker, roles, RED daemon."""

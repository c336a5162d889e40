"""The CPU path: llama.cpp through llama-cpp-python's low-level bindings."""

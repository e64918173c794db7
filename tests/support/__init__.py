"""Test helpers shared by several test packages: a scripted model endpoint and a throwaway
environment for the real ``opencode`` binary. Nothing here is imported by occoord itself."""

"""The playbook language: schema, loading with line numbers, inspecting (lint), matching."""

"""Test infrastructure shared by the suites: servers, samples, and database helpers."""

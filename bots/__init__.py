"""Chat-ops front ends. Only this package imports slack_bolt (see the import-linter contracts)."""

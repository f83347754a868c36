"""The pure conductor: run state + event -> new state + directives. No I/O, no Celery."""

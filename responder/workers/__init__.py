"""Workers: Celery tasks that load state, ask the conductor, run plug-ins and save."""

"""SAGE Studio web application: settings, database, REST API, HTML pages and the `sage-studio` CLI."""

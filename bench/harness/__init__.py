"""The machinery behind ``bench/run``: rows, processes, the database, measurements, the table."""

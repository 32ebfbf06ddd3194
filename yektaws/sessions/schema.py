"""The ``sessions`` table exactly as the YektaYar API creates it (CONTRACT section 2).

Only :meth:`SessionStore.init_schema` uses this, on a database of the gateway's own (the embedded
file, or an explicit ``yektaws db init``); the gateway never creates tables in the YektaYar database
implicitly.
"""

POSTGRES_SESSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS sessions (
    id SERIAL PRIMARY KEY,
    token VARCHAR(255) UNIQUE NOT NULL,
    user_id INTEGER NULL,
    is_logged_in BOOLEAN DEFAULT FALSE,
    metadata JSONB DEFAULT '{}'::jsonb,
    created_at TIMESTAMP DEFAULT NOW(),
    expires_at TIMESTAMP NOT NULL,
    last_activity_at TIMESTAMP DEFAULT NOW()
)
"""

# SQLite has no TIMESTAMP type: the same wall-clock UTC values are kept as ISO text
# ('YYYY-MM-DD HH:MM:SS.fff'), which compares correctly as text.
SQLITE_SESSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token VARCHAR(255) UNIQUE NOT NULL,
    user_id INTEGER NULL,
    is_logged_in BOOLEAN DEFAULT 0,
    metadata TEXT DEFAULT '{}',
    created_at TEXT DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    expires_at TEXT NOT NULL,
    last_activity_at TEXT DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
)
"""

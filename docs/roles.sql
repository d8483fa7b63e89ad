-- Least-privilege roles for kbrefresh: run once per database, as an administrator,
-- with the passwords taken from the environment (never typed into a file):
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -v db=kb \
--        -v owner_password="$KBREFRESH_OWNER_PASSWORD" \
--        -v chatbot_password="$KBREFRESH_CHATBOT_PASSWORD" \
--        -v chatlog_password="$KBREFRESH_CHATLOG_PASSWORD" -f docs/roles.sql
--
-- kbrefresh_owner   builds, checks, swaps, rolls back (KBREFRESH_DATABASE_URL of the CLI and
--                   the flows): owns the schema's tables, is not a superuser, cannot create
--                   roles or databases.
-- kbrefresh_chatbot the Retriever's database_url: member of kbrefresh_reader (SELECT on the
--                   catalog, the routing, the chunk tables and kb_<name>_live; nothing else,
--                   not the query log).
-- kbrefresh_chatlog the Retriever's log_database_url: member of kbrefresh_logger (INSERT on
--                   query_log and feedback; it cannot read them or any knowledge-base table).
-- The migrations (run by kbrefresh_owner on first use) grant the group roles; chunk tables
-- and live views are granted to kbrefresh_reader when kbrefresh creates them.
CREATE ROLE kbrefresh_reader NOLOGIN;
CREATE ROLE kbrefresh_logger NOLOGIN;
CREATE ROLE kbrefresh_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
CREATE ROLE kbrefresh_chatbot LOGIN NOSUPERUSER IN ROLE kbrefresh_reader PASSWORD :'chatbot_password';
CREATE ROLE kbrefresh_chatlog LOGIN NOSUPERUSER IN ROLE kbrefresh_logger PASSWORD :'chatlog_password';
ALTER DATABASE :"db" OWNER TO kbrefresh_owner;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO kbrefresh_chatbot, kbrefresh_chatlog;
\connect :"db"
-- pgvector needs a superuser to install (unless your provider marks it trusted).
CREATE EXTENSION IF NOT EXISTS vector;

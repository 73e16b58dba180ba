-- Runs once, when the postgres container initialises its data directory (as the superuser).
-- An app table owned by the app's own role, and a walhook role with just what walhook needs:
-- LOGIN + REPLICATION, CREATE on the database (its publication and its `walhook` schema), and
-- membership in the role that owns the subscribed tables (adding a table to a publication and
-- setting its REPLICA IDENTITY need the owner's rights).
CREATE ROLE shop NOLOGIN;
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    total       numeric(12,2) NOT NULL,
    status      text NOT NULL DEFAULT 'pending',
    customer_id text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE orders OWNER TO shop;
ALTER SEQUENCE orders_id_seq OWNER TO shop;

CREATE ROLE walhook LOGIN REPLICATION PASSWORD 'walhook';
GRANT CREATE ON DATABASE app TO walhook;
GRANT shop TO walhook;

-- walhook outbox, version 1. `{schema}` is replaced by the quoted [outbox] schema.
-- None of these tables is ever added to walhook's publication.

CREATE TABLE {schema}.checkpoint (
    slot        text PRIMARY KEY,
    -- Commit LSN of the last source transaction whose deliveries are stored (exactly-once).
    commit_lsn  bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.subscriptions (
    id              text PRIMARY KEY,
    source          text NOT NULL CHECK (source IN ('config', 'api')),
    table_name      text NOT NULL,
    events          text[] NOT NULL,
    url             text NOT NULL,
    secret          text NOT NULL,
    active          boolean NOT NULL DEFAULT true,
    filter          jsonb,
    select_columns  text[],
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per (change, matching subscription), holding the exact payload to sign and send.
CREATE TABLE {schema}.deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id  text COLLATE "C" NOT NULL,
    event_id         text NOT NULL,
    event            text NOT NULL,
    -- Primary-key values of the row as JSON; deliveries with the same key go out in id order.
    ordering_key     text COLLATE "C" NOT NULL,
    payload          text NOT NULL,
    commit_lsn       bigint NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    last_http_status integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

-- The claim query: due work that is not finished, oldest first.
CREATE INDEX deliveries_due ON {schema}.deliveries (next_attempt_at, id)
    WHERE status IN ('pending', 'failed');
-- Per-key ordering: "is an older delivery of this key still unfinished?"
CREATE INDEX deliveries_key ON {schema}.deliveries (subscription_id, ordering_key, id)
    WHERE status IN ('pending', 'failed');
-- Retention and the API's per-subscription listing.
CREATE INDEX deliveries_finished ON {schema}.deliveries (status, finished_at)
    WHERE status IN ('delivered', 'dead');

CREATE TABLE {schema}.attempts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id    bigint NOT NULL REFERENCES {schema}.deliveries (id) ON DELETE CASCADE,
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    duration_ms    integer,
    http_status    integer,
    error_kind     text,
    response_body  text
);
CREATE INDEX attempts_delivery ON {schema}.attempts (delivery_id);

-- walhook outbox, version 5: delivery options per subscription (static headers, the signature
-- header, a body template, a rate limit) and the CloudEvents format.

ALTER TABLE {schema}.subscriptions
    -- [[name, value], ...]: ordered, and names may differ only in case from walhook's view.
    ADD COLUMN headers jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN signature_header text,
    ADD COLUMN template text,
    -- "50/s", "100/m", "1000/h"; NULL = unlimited.
    ADD COLUMN rate_limit text,
    DROP CONSTRAINT subscriptions_format_check,
    ADD CONSTRAINT subscriptions_format_check
        CHECK (format IN ('json', 'slack', 'discord', 'cloudevents'));

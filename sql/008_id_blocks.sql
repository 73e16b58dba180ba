-- walhook outbox, version 8: delivery ids in blocks.
--
-- The ingest writer assigns the ids of the rows it stores (so it can hand them to this
-- process's delivery pumps after the commit without reading them back). With the identity
-- sequence advancing by 4096 per nextval, one nextval reserves a whole block for it, instead of
-- one nextval per row. Rows inserted with the default still get unique ids (each a block's
-- first); ids stay ascending in commit order for each writer. Nothing else changes.
ALTER TABLE {schema}.deliveries ALTER COLUMN id SET INCREMENT BY 4096;

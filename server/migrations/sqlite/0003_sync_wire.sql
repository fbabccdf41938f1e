-- Record sync: each record row keeps its encoding as a pull sends it (the
-- CBOR `sync-record` of docs/protocol.md §24.6), written with the row, so a
-- pull reads two columns per record and copies the bytes (decision Y21).
-- Rows written before this migration have NULL and are encoded when read.
ALTER TABLE sync_records ADD COLUMN wire BLOB;

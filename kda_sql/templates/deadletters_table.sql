-- Dead letters: one row per source record the decoder refused (a poison batch), with the
-- reason in the contract's words, the batch id its header claims (unverified, NULL when there
-- is no header), the SHA-256 and size of the whole record and its first 64 KiB.
CREATE TABLE deadletters (
  reason STRING,
  batch_id STRING,
  payload_sha256 STRING,
  payload_bytes INT,
  payload BYTES,
  source STRING
) WITH (
${deadletter_options}
)

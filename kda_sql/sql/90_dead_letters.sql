-- Route the refused records to the dead-letter sink; the rules never see them.
INSERT INTO deadletters
SELECT
  dead_letter_reason AS reason,
  dead_letter_batch_id AS batch_id,
  dead_letter_sha256 AS payload_sha256,
  dead_letter_bytes AS payload_bytes,
  dead_letter_payload AS payload,
  'stream-rules' AS source
FROM readings
WHERE dead_letter_reason IS NOT NULL

package com.iiot.flink;

import java.io.IOException;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.Base64;
import java.util.List;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.metrics.Counter;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.types.logical.LogicalTypeRoot;
import org.apache.flink.util.Collector;

/**
 * One compact batch in; one row per reading out, in event-time order (stable), or one
 * dead-letter row.
 *
 * <p>Columns are matched by name: the reading's {@code timestamp, factory_id, machine_id,
 * sensor_id, metric, value, unit}, and the dead letter's {@code dead_letter_reason,
 * dead_letter_batch_id} (the id the header claims, unverified), {@code dead_letter_sha256,
 * dead_letter_bytes} (the record's size) and {@code dead_letter_payload} (its first 64 KiB). A
 * refused record never fails the job: its row has only the dead-letter columns set, so the
 * rules' view (which needs a timestamp) ignores it and the dead-letter INSERT keeps it.
 *
 * <p>Readings leave in time order, as the JSON rows did: the watermark follows the newest
 * reading seen, so a batch's series (grouped on the wire) must not run ahead of each other.
 */
public final class BatchDeserializationSchema implements DeserializationSchema<RowData> {
    private static final long serialVersionUID = 1L;
    static final List<String> COLUMNS = Arrays.asList("timestamp", "factory_id", "machine_id",
            "sensor_id", "metric", "value", "unit", "dead_letter_reason", "dead_letter_batch_id",
            "dead_letter_sha256", "dead_letter_bytes", "dead_letter_payload");
    /** Each column's type: a reading's row answers only its column's own getter. */
    static final List<LogicalTypeRoot> ROOTS = Arrays.asList(LogicalTypeRoot.BIGINT,
            LogicalTypeRoot.VARCHAR, LogicalTypeRoot.VARCHAR, LogicalTypeRoot.VARCHAR,
            LogicalTypeRoot.VARCHAR, LogicalTypeRoot.DOUBLE, LogicalTypeRoot.VARCHAR,
            LogicalTypeRoot.VARCHAR, LogicalTypeRoot.VARCHAR, LogicalTypeRoot.VARCHAR,
            LogicalTypeRoot.INTEGER, LogicalTypeRoot.VARBINARY);
    private static final int DEAD_LETTER_PAYLOAD_CAP = 64 * 1024;

    private final TypeInformation<RowData> producedType;
    private final int[] target; // COLUMNS index -> produced field position, -1 if absent
    private final int arity;
    private final int[] readingField; // field position -> ReadingRow's field, -1: null
    private final boolean base64;
    private transient BatchDecoder decoder;
    private transient Counter readings;
    private transient Counter deadLetters;

    BatchDeserializationSchema(TypeInformation<RowData> producedType, List<String> fieldNames,
            boolean base64) {
        this.producedType = producedType;
        this.arity = fieldNames.size();
        this.target = new int[COLUMNS.size()];
        for (int i = 0; i < COLUMNS.size(); i++) {
            target[i] = fieldNames.indexOf(COLUMNS.get(i));
        }
        this.readingField = new int[arity];
        java.util.Arrays.fill(readingField, -1);
        int[] keyColumns = {1, 2, 3, 4, 6}; // factory, machine, sensor, metric, unit
        for (int k = 0; k < keyColumns.length; k++) {
            if (target[keyColumns[k]] >= 0) {
                readingField[target[keyColumns[k]]] = ReadingRow.KEY + k;
            }
        }
        if (target[0] >= 0) readingField[target[0]] = ReadingRow.TIMESTAMP;
        if (target[5] >= 0) readingField[target[5]] = ReadingRow.VALUE;
        this.base64 = base64;
    }

    @Override
    public void open(InitializationContext context) {
        decoder = new BatchDecoder();
        readings = context.getMetricGroup().counter("iiotBatchReadings");
        deadLetters = context.getMetricGroup().counter("iiotBatchDeadLetters");
    }

    @Override
    public RowData deserialize(byte[] message) {
        throw new UnsupportedOperationException("one batch holds many rows: use the collector");
    }

    @Override
    public void deserialize(byte[] message, Collector<RowData> out) throws IOException {
        if (message == null) {
            return;
        }
        byte[] payload = message;
        if (base64) {
            try {
                payload = Base64.getDecoder().decode(message);
            } catch (IllegalArgumentException e) {
                deadLetter(out, "payload: not base64 (" + e.getMessage() + ")", message);
                return;
            }
        }
        BatchDecoder.Columns columns;
        try {
            columns = decoder.decode(payload);
        } catch (BatchDecoder.WireFormatException e) {
            deadLetter(out, e.getMessage(), payload);
            return;
        } catch (RuntimeException | OutOfMemoryError e) { // defence in depth: never fail the job
            deadLetter(out, "decoder: " + e, payload);
            return;
        }
        int nSeries = columns.series.length;
        StringData[][] keys = new StringData[nSeries][5];
        for (int s = 0; s < nSeries; s++) {
            for (int k = 0; k < 5; k++) {
                keys[s][k] = StringData.fromBytes(columns.seriesUtf8[s][k]); // no re-encoding
            }
        }
        ReadingRow.Batch batch = new ReadingRow.Batch(arity, readingField, columns.timestamp,
                columns.value, columns.seriesIndex, keys);
        int[] order = columns.timeOrder();
        for (int i : order) {
            out.collect(new ReadingRow(batch, i));
        }
        readings.inc(order.length);
    }

    private void deadLetter(Collector<RowData> out, String reason, byte[] payload) {
        deadLetters.inc();
        GenericRowData row = new GenericRowData(arity);
        set(row, 7, StringData.fromString(reason));
        String claimed = BatchDecoder.claimedBatchId(payload);
        set(row, 8, claimed == null ? null : StringData.fromString(claimed));
        set(row, 9, StringData.fromString(sha256(payload)));
        set(row, 10, payload.length);
        set(row, 11, payload.length <= DEAD_LETTER_PAYLOAD_CAP ? payload
                : Arrays.copyOf(payload, DEAD_LETTER_PAYLOAD_CAP));
        out.collect(row);
    }

    private void set(GenericRowData row, int column, Object value) {
        if (target[column] >= 0) {
            row.setField(target[column], value);
        }
    }

    private static String sha256(byte[] payload) {
        try {
            byte[] digest = MessageDigest.getInstance("SHA-256").digest(payload);
            StringBuilder hex = new StringBuilder(64);
            for (byte b : digest) {
                hex.append(Character.forDigit((b >> 4) & 0xf, 16))
                        .append(Character.forDigit(b & 0xf, 16));
            }
            return hex.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e); // every JVM has SHA-256
        }
    }

    @Override
    public boolean isEndOfStream(RowData nextElement) {
        return false;
    }

    @Override
    public TypeInformation<RowData> getProducedType() {
        return producedType;
    }
}

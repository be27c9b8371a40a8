package com.iiot.flink;

import org.apache.flink.table.data.ArrayData;
import org.apache.flink.table.data.DecimalData;
import org.apache.flink.table.data.MapData;
import org.apache.flink.table.data.RawValueData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.TimestampData;
import org.apache.flink.types.RowKind;

/**
 * One reading of a decoded batch as a row, read from the batch's columns where it is asked for:
 * one small object per reading instead of a field array with a boxed timestamp and value
 * ({@code GenericRowData}). The dead-letter columns are always null here.
 */
final class ReadingRow implements RowData {
    /** A decoded batch as the rows of its readings see it. */
    static final class Batch {
        final int arity;
        final int[] field; // position -> reading field: 0 timestamp, 1 value, 2.. key k + 2, -1 null
        final long[] timestamp;
        final double[] value;
        final int[] seriesIndex;
        final StringData[][] keys; // [series][factory, machine, sensor, metric, unit]

        Batch(int arity, int[] field, long[] timestamp, double[] value, int[] seriesIndex,
                StringData[][] keys) {
            this.arity = arity;
            this.field = field;
            this.timestamp = timestamp;
            this.value = value;
            this.seriesIndex = seriesIndex;
            this.keys = keys;
        }
    }

    static final int TIMESTAMP = 0;
    static final int VALUE = 1;
    static final int KEY = 2;

    private final Batch batch;
    private final int index;
    private RowKind kind = RowKind.INSERT;

    ReadingRow(Batch batch, int index) {
        this.batch = batch;
        this.index = index;
    }

    @Override
    public int getArity() {
        return batch.arity;
    }

    @Override
    public RowKind getRowKind() {
        return kind;
    }

    @Override
    public void setRowKind(RowKind kind) {
        this.kind = kind;
    }

    @Override
    public boolean isNullAt(int pos) {
        return batch.field[pos] < 0;
    }

    @Override
    public long getLong(int pos) {
        if (batch.field[pos] != TIMESTAMP) {
            throw wrongType(pos, "BIGINT");
        }
        return batch.timestamp[index];
    }

    @Override
    public double getDouble(int pos) {
        if (batch.field[pos] != VALUE) {
            throw wrongType(pos, "DOUBLE");
        }
        return batch.value[index];
    }

    @Override
    public StringData getString(int pos) {
        int field = batch.field[pos];
        if (field < KEY) {
            throw wrongType(pos, "STRING");
        }
        return batch.keys[batch.seriesIndex[index]][field - KEY];
    }

    private static UnsupportedOperationException wrongType(int pos, String type) {
        return new UnsupportedOperationException("iiot-batch: field " + pos + " is not a "
                + type + " reading column");
    }

    @Override
    public boolean getBoolean(int pos) {
        throw wrongType(pos, "BOOLEAN");
    }

    @Override
    public byte getByte(int pos) {
        throw wrongType(pos, "TINYINT");
    }

    @Override
    public short getShort(int pos) {
        throw wrongType(pos, "SMALLINT");
    }

    @Override
    public int getInt(int pos) {
        throw wrongType(pos, "INT");
    }

    @Override
    public float getFloat(int pos) {
        throw wrongType(pos, "FLOAT");
    }

    @Override
    public DecimalData getDecimal(int pos, int precision, int scale) {
        throw wrongType(pos, "DECIMAL");
    }

    @Override
    public TimestampData getTimestamp(int pos, int precision) {
        throw wrongType(pos, "TIMESTAMP");
    }

    @Override
    public <T> RawValueData<T> getRawValue(int pos) {
        throw wrongType(pos, "RAW");
    }

    @Override
    public byte[] getBinary(int pos) {
        throw wrongType(pos, "BYTES");
    }

    @Override
    public ArrayData getArray(int pos) {
        throw wrongType(pos, "ARRAY");
    }

    @Override
    public MapData getMap(int pos) {
        throw wrongType(pos, "MAP");
    }

    @Override
    public RowData getRow(int pos, int numFields) {
        throw wrongType(pos, "ROW");
    }

    @Override
    public String toString() {
        StringBuilder text = new StringBuilder(kind.shortString()).append('(');
        for (int pos = 0; pos < batch.arity; pos++) {
            int field = batch.field[pos];
            text.append(pos == 0 ? "" : ",").append(field < 0 ? "null"
                    : field == TIMESTAMP ? String.valueOf(getLong(pos))
                    : field == VALUE ? String.valueOf(getDouble(pos)) : getString(pos).toString());
        }
        return text.append(')').toString();
    }
}

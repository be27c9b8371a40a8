package com.iiot.flink;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.CRC32;

import org.apache.flink.shaded.io.airlift.compress.zstd.ZstdDecompressor;

/**
 * A Java port of {@code iiot.wire.decode_batch} (compact batch version 1) for the Flink format.
 *
 * <p>Integrity first, in the same order as {@code iiot.wire._verified_header}: header length and
 * magic, version, payload size, announced readings, body length, CRC-32, the zstd frame's
 * recorded content size against the limit (and against the announced readings: every reading
 * takes at least one byte of the body), all before anything is decompressed; then the msgpack
 * body with every array length checked against the body before anything of the batch's size is
 * allocated. One input therefore costs at most the decompressed-size limit plus the readings'
 * columns. Any failure is a {@link WireFormatException} whose message says what is wrong, in
 * the Python decoder's words where the check is the same.
 *
 * <p>zstd is the pure-Java aircompressor that flink-dist shades
 * ({@code org.apache.flink.shaded.io.airlift.compress.zstd}): present in every Flink 1.20
 * runtime, Managed Service for Apache Flink's included, but not a public Flink API, so a Flink
 * upgrade may move it (the jar then fails to compile, which the tests show at once).
 */
public final class BatchDecoder {
    public static final int HEADER_SIZE = 36;
    private static final byte[] MAGIC = {'I', 'I', 'O', 'T', 'B'};
    private static final int VERSION = 1;
    private static final int FLAG_ZSTD = 0x01;
    private static final int MAX_DECIMALS = 6;
    private static final int MAX_PRODUCER_CHARS = 256;
    private static final double[] POW10 = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6};

    // iiot.wire.Limits defaults
    public long maxPayloadBytes = 1024 * 1024;
    public long maxBatchReadings = 1_000_000;
    public long maxDecompressedBytes = 32L * 1024 * 1024;

    private final ZstdDecompressor zstd = new ZstdDecompressor();
    private final CRC32 crc = new CRC32();

    /** One decoded batch, readings grouped by series as on the wire. */
    public static final class Columns {
        public String[][] series; // [n_series][factory, machine, sensor, metric, unit]
        public byte[][][] seriesUtf8; // the same keys as their UTF-8 bytes
        public int[] seriesIndex;
        public long[] timestamp;
        public double[] value;
        public long batchIdHigh;
        public long batchIdLow;

        /** Positions in time order (stable: equal timestamps keep wire order). */
        public int[] timeOrder() {
            int n = timestamp.length;
            int[] order = new int[n];
            boolean sorted = true;
            for (int i = 0; i < n; i++) {
                order[i] = i;
                if (i > 0 && timestamp[i] < timestamp[i - 1]) {
                    sorted = false;
                }
            }
            if (!sorted) {
                mergeSort(order, new int[n], 0, n, timestamp);
            }
            return order;
        }

        private static void mergeSort(int[] a, int[] tmp, int lo, int hi, long[] key) {
            if (hi - lo < 2) {
                return;
            }
            int mid = (lo + hi) >>> 1;
            mergeSort(a, tmp, lo, mid, key);
            mergeSort(a, tmp, mid, hi, key);
            if (key[a[mid - 1]] <= key[a[mid]]) {
                return;
            }
            System.arraycopy(a, lo, tmp, lo, hi - lo);
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                a[k++] = key[tmp[j]] < key[tmp[i]] ? tmp[j++] : tmp[i++];
            }
            while (i < mid) {
                a[k++] = tmp[i++];
            }
            while (j < hi) {
                a[k++] = tmp[j++];
            }
        }
    }

    public static final class WireFormatException extends Exception {
        public WireFormatException(String message) {
            super(message, null, false, false);
        }
    }

    /** The batch id a payload's header claims (untrusted: for dead letters only), or null. */
    public static String claimedBatchId(byte[] payload) {
        if (payload.length < 24) {
            return null;
        }
        for (int i = 0; i < MAGIC.length; i++) {
            if (payload[i] != MAGIC[i]) {
                return null;
            }
        }
        ByteBuffer id = ByteBuffer.wrap(payload, 8, 16);
        return new java.util.UUID(id.getLong(), id.getLong()).toString();
    }

    public Columns decode(byte[] payload) throws WireFormatException {
        if (payload.length < HEADER_SIZE) {
            throw new WireFormatException("header: " + payload.length
                    + " bytes is shorter than the " + HEADER_SIZE + "-byte batch header");
        }
        for (int i = 0; i < MAGIC.length; i++) {
            if (payload[i] != MAGIC[i]) {
                throw new WireFormatException("header: not a compact batch (missing IIOTB magic)");
            }
        }
        ByteBuffer header = ByteBuffer.wrap(payload, 0, HEADER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
        int version = payload[5] & 0xff;
        int flags = payload[6] & 0xff;
        long idHigh = ByteBuffer.wrap(payload, 8, 8).getLong();
        long idLow = ByteBuffer.wrap(payload, 16, 8).getLong();
        long count = header.getInt(24) & 0xffffffffL;
        long bodyLength = header.getInt(28) & 0xffffffffL;
        long checksum = header.getInt(32) & 0xffffffffL;
        if (version != VERSION) {
            throw new WireFormatException("header: batch format version " + version
                    + " is not supported (this release reads " + VERSION + ")");
        }
        if (payload.length > maxPayloadBytes) {
            throw new WireFormatException("payload: " + payload.length + " bytes exceeds the "
                    + maxPayloadBytes + "-byte limit");
        }
        if (count > maxBatchReadings) {
            throw new WireFormatException("header: announces " + count + " readings, more than the"
                    + " limit of " + maxBatchReadings + " per batch");
        }
        int bodyLen = payload.length - HEADER_SIZE;
        if (bodyLen != bodyLength) {
            throw new WireFormatException("body: " + bodyLen + " bytes, the header announces "
                    + bodyLength + " (truncated or padded)");
        }
        crc.reset();
        crc.update(payload, HEADER_SIZE, bodyLen);
        if (crc.getValue() != checksum) {
            throw new WireFormatException("body: CRC-32 mismatch, the batch was corrupted in transit");
        }
        byte[] body;
        int bodyOffset;
        int bodySize;
        if ((flags & FLAG_ZSTD) != 0) {
            long contentSize;
            try {
                contentSize = ZstdDecompressor.getDecompressedSize(payload, HEADER_SIZE, bodyLen);
            } catch (RuntimeException e) {
                throw new WireFormatException("body: not a zstd frame (" + e.getMessage() + ")");
            }
            if (contentSize < 0) {
                throw new WireFormatException("body: the zstd frame does not record its "
                        + "decompressed size (version 1 batches always do)");
            }
            if (contentSize > maxDecompressedBytes) {
                throw new WireFormatException("body: decompresses to " + contentSize
                        + " bytes, more than the limit of " + maxDecompressedBytes);
            }
            if (count > contentSize) {
                throw new WireFormatException("header: announces " + count + " readings, the body"
                        + " decompresses to only " + contentSize + " bytes");
            }
            body = new byte[(int) contentSize];
            int written;
            try {
                written = zstd.decompress(payload, HEADER_SIZE, bodyLen, body, 0, body.length);
            } catch (RuntimeException e) {
                throw new WireFormatException("body: zstd decompression failed (" + e.getMessage() + ")");
            }
            if (written != contentSize) {
                throw new WireFormatException("body: zstd decompression failed (content size "
                        + contentSize + ", got " + written + ")");
            }
            bodyOffset = 0;
            bodySize = written;
        } else {
            body = payload;
            bodyOffset = HEADER_SIZE;
            bodySize = bodyLen;
        }
        Columns columns;
        try {
            columns = columnsFromBody(new MsgPack(body, bodyOffset, bodySize), (int) count);
        } catch (WireFormatException e) {
            throw e;
        } catch (RuntimeException e) {
            throw new WireFormatException("body: inconsistent columns (" + e + ")");
        }
        columns.batchIdHigh = idHigh;
        columns.batchIdLow = idLow;
        return columns;
    }

    /** A typed array as the wire carries it: [dtype, bytes]. */
    private static final class WireArray {
        String dtype;
        int offset;
        int length;
        byte[] buf;

        int itemSize(String what) throws WireFormatException {
            switch (dtype) {
                case "|i1":
                case "|u1":
                    return 1;
                case "<i2":
                    return 2;
                case "<i4":
                case "<u4":
                    return 4;
                case "<i8":
                    return 8;
                default:
                    throw new WireFormatException("batch body: " + what
                            + " has unsupported dtype '" + dtype + "'");
            }
        }

        /** The values as longs, after checking there are exactly `expected` of them. */
        long[] longs(long expected, String what) throws WireFormatException {
            int size = itemSize(what);
            if (length % size != 0 || length / size != expected) {
                throw new WireFormatException("batch body: " + what + " holds " + (length / size)
                        + " values, expected " + expected);
            }
            int n = (int) expected;
            long[] out = new long[n];
            ByteBuffer b = ByteBuffer.wrap(buf, offset, length).order(ByteOrder.LITTLE_ENDIAN);
            switch (dtype) {
                case "|i1":
                    for (int i = 0; i < n; i++) out[i] = buf[offset + i];
                    break;
                case "|u1":
                    for (int i = 0; i < n; i++) out[i] = buf[offset + i] & 0xff;
                    break;
                case "<i2":
                    for (int i = 0; i < n; i++) out[i] = b.getShort(offset + 2 * i);
                    break;
                case "<i4":
                    for (int i = 0; i < n; i++) out[i] = b.getInt(offset + 4 * i);
                    break;
                case "<u4":
                    for (int i = 0; i < n; i++) out[i] = b.getInt(offset + 4 * i) & 0xffffffffL;
                    break;
                default:
                    for (int i = 0; i < n; i++) out[i] = b.getLong(offset + 8 * i);
            }
            return out;
        }
    }

    private Columns columnsFromBody(MsgPack in, int count) throws WireFormatException {
        int fields = in.mapHeader("batch body");
        String producer = null;
        boolean haveCreated = false;
        List<String[]> seriesList = null;
        List<byte[][]> seriesUtf8List = new ArrayList<>();
        WireArray counts = null, decimals = null, tsFirst = null, tsDelta = null, qFirst = null,
                qDelta = null, rawValues = null;
        for (int f = 0; f < fields; f++) {
            String key = in.string("batch body: key");
            switch (key) {
                case "producer":
                    producer = in.string("producer");
                    if (producer.codePointCount(0, producer.length()) > MAX_PRODUCER_CHARS) {
                        throw new WireFormatException("body: producer: Expected str of length <= "
                                + MAX_PRODUCER_CHARS);
                    }
                    break;
                case "created_ms":
                    in.integer("created_ms");
                    haveCreated = true;
                    break;
                case "first_seq":
                case "last_seq":
                    if (!in.nil()) {
                        in.integer(key);
                    }
                    break;
                case "series": {
                    int n = in.arrayHeader("series");
                    seriesList = new ArrayList<>(Math.min(n, 1 << 16));
                    for (int s = 0; s < n; s++) {
                        if (in.arrayHeader("series[" + s + "]") != 5) {
                            throw new WireFormatException("body: series[" + s
                                    + "]: Expected `array` of length 5");
                        }
                        String[] key5 = new String[5];
                        byte[][] utf8 = new byte[5][];
                        for (int k = 0; k < 5; k++) {
                            key5[k] = in.string("series[" + s + "]");
                            utf8[k] = java.util.Arrays.copyOfRange(in.buf, in.lastOffset,
                                    in.lastOffset + in.lastLength);
                        }
                        seriesList.add(key5);
                        seriesUtf8List.add(utf8);
                    }
                    break;
                }
                case "counts": counts = wireArray(in, key); break;
                case "decimals": decimals = wireArray(in, key); break;
                case "ts_first": tsFirst = wireArray(in, key); break;
                case "ts_delta": tsDelta = wireArray(in, key); break;
                case "q_first": qFirst = wireArray(in, key); break;
                case "q_delta": qDelta = wireArray(in, key); break;
                case "raw_values": rawValues = wireArray(in, key); break;
                default:
                    throw new WireFormatException("body: Object contains unknown field `" + key + "`");
            }
        }
        if (!in.atEnd()) {
            throw new WireFormatException("body: trailing bytes after the batch body");
        }
        if (producer == null || !haveCreated || seriesList == null || counts == null
                || decimals == null || tsFirst == null || tsDelta == null || qFirst == null
                || qDelta == null || rawValues == null) {
            throw new WireFormatException("body: Object missing a required field");
        }
        int nSeries = seriesList.size();
        long[] seriesCounts = counts.longs(nSeries, "counts");
        long total = 0;
        for (long c : seriesCounts) {
            if (c < 0) {
                throw new WireFormatException("body: inconsistent columns (negative count)");
            }
            total += c;
        }
        if (total != count) {
            throw new WireFormatException("body: series counts add up to " + total
                    + ", the header announces " + count);
        }
        long[] dec = decimals.longs(nSeries, "decimals");
        long nScaled = 0;
        for (int s = 0; s < nSeries; s++) {
            if (dec[s] < -1 || dec[s] > MAX_DECIMALS) {
                throw new WireFormatException("body: decimals out of range");
            }
            if (dec[s] >= 0) {
                nScaled += seriesCounts[s];
            }
        }
        long[] first = tsFirst.longs(nSeries, "ts_first");
        long[] delta = tsDelta.longs(count, "ts_delta");
        long[] qf = qFirst.longs(nSeries, "q_first");
        long[] qd = qDelta.longs(nScaled, "q_delta");
        if (rawValues.itemSize("raw_values") != 1 || rawValues.length != (count - nScaled) * 8) {
            throw new WireFormatException("batch body: raw_values holds " + rawValues.length
                    + " values, expected " + (count - nScaled) * 8);
        }
        int nRaw = (int) (count - nScaled);

        Columns out = new Columns();
        out.series = seriesList.toArray(new String[0][]);
        out.seriesUtf8 = seriesUtf8List.toArray(new byte[0][][]);
        out.seriesIndex = new int[count];
        out.timestamp = new long[count];
        out.value = new double[count];
        int pos = 0, qPos = 0, rawPos = 0;
        byte[] raw = rawValues.buf;
        int rawBase = rawValues.offset;
        for (int s = 0; s < nSeries; s++) {
            int n = (int) seriesCounts[s];
            boolean scaled = dec[s] >= 0;
            double scale = scaled ? POW10[(int) dec[s]] : 1.0;
            long t = 0, q = 0;
            for (int j = 0; j < n; j++, pos++) {
                // _undelta: first value at the series start, then running deltas (int64 wrap)
                t = j == 0 ? first[s] : t + delta[pos];
                out.seriesIndex[pos] = s;
                out.timestamp[pos] = t;
                if (scaled) {
                    q = j == 0 ? qf[s] : q + qd[qPos];
                    qPos++;
                    out.value[pos] = (double) q / scale;
                } else {
                    long bits = 0;
                    for (int k = 0; k < 8; k++) { // byte-shuffled: plane k holds byte k
                        bits |= (raw[rawBase + k * nRaw + rawPos] & 0xffL) << (8 * k);
                    }
                    rawPos++;
                    out.value[pos] = Double.longBitsToDouble(bits);
                }
            }
        }
        return out;
    }

    private static WireArray wireArray(MsgPack in, String what) throws WireFormatException {
        if (in.arrayHeader(what) != 2) {
            throw new WireFormatException("body: " + what + ": Expected `array` of length 2");
        }
        WireArray a = new WireArray();
        a.dtype = in.string(what + ".dtype");
        in.bin(what + ".data");
        a.buf = in.buf;
        a.offset = in.lastOffset;
        a.length = in.lastLength;
        return a;
    }

    /** Just enough msgpack for the batch body, every length checked against the input. */
    private static final class MsgPack {
        final byte[] buf;
        int pos;
        final int end;
        int lastOffset;
        int lastLength;
        private final CharsetDecoder utf8 = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);

        MsgPack(byte[] buf, int offset, int length) {
            this.buf = buf;
            this.pos = offset;
            this.end = offset + length;
        }

        boolean atEnd() {
            return pos == end;
        }

        private int u8(String what) throws WireFormatException {
            if (pos >= end) {
                throw new WireFormatException("body: Input data was truncated (" + what + ")");
            }
            return buf[pos++] & 0xff;
        }

        private long un(int bytes, String what) throws WireFormatException {
            long v = 0;
            for (int i = 0; i < bytes; i++) {
                v = (v << 8) | u8(what);
            }
            return v;
        }

        private WireFormatException expected(String type, String what, int tag) {
            return new WireFormatException("body: Expected `" + type + "`, got tag 0x"
                    + Integer.toHexString(tag) + " - at `" + what + "`");
        }

        int mapHeader(String what) throws WireFormatException {
            int tag = u8(what);
            if ((tag & 0xf0) == 0x80) return tag & 0x0f;
            if (tag == 0xde) return (int) un(2, what);
            if (tag == 0xdf) return checkedCount(un(4, what), what);
            throw expected("object", what, tag);
        }

        int arrayHeader(String what) throws WireFormatException {
            int tag = u8(what);
            if ((tag & 0xf0) == 0x90) return tag & 0x0f;
            if (tag == 0xdc) return (int) un(2, what);
            if (tag == 0xdd) return checkedCount(un(4, what), what);
            throw expected("array", what, tag);
        }

        private int checkedCount(long n, String what) throws WireFormatException {
            if (n > end - pos) { // every item takes at least one byte
                throw new WireFormatException("body: Input data was truncated (" + what + ")");
            }
            return (int) n;
        }

        boolean nil() throws WireFormatException {
            if (pos < end && (buf[pos] & 0xff) == 0xc0) {
                pos++;
                return true;
            }
            return false;
        }

        long integer(String what) throws WireFormatException {
            int tag = u8(what);
            if (tag <= 0x7f) return tag;
            if (tag >= 0xe0) return (byte) tag;
            switch (tag) {
                case 0xcc: return un(1, what);
                case 0xcd: return un(2, what);
                case 0xce: return un(4, what);
                case 0xcf: {
                    long v = un(8, what);
                    if (v < 0) throw new WireFormatException("body: integer out of range - at `" + what + "`");
                    return v;
                }
                case 0xd0: return (byte) un(1, what);
                case 0xd1: return (short) un(2, what);
                case 0xd2: return (int) un(4, what);
                case 0xd3: return un(8, what);
                default: throw expected("int", what, tag);
            }
        }

        private void span(long length, String what) throws WireFormatException {
            if (length > end - pos) {
                throw new WireFormatException("body: Input data was truncated (" + what + ")");
            }
            lastOffset = pos;
            lastLength = (int) length;
            pos += (int) length;
        }

        String string(String what) throws WireFormatException {
            int tag = u8(what);
            long length;
            if ((tag & 0xe0) == 0xa0) length = tag & 0x1f;
            else if (tag == 0xd9) length = un(1, what);
            else if (tag == 0xda) length = un(2, what);
            else if (tag == 0xdb) length = un(4, what);
            else throw expected("str", what, tag);
            span(length, what);
            boolean ascii = true;
            for (int i = lastOffset; i < lastOffset + lastLength; i++) {
                if (buf[i] < 0) {
                    ascii = false;
                    break;
                }
            }
            if (ascii) {
                return new String(buf, lastOffset, lastLength, StandardCharsets.ISO_8859_1);
            }
            try {
                CharBuffer chars = utf8.decode(ByteBuffer.wrap(buf, lastOffset, lastLength));
                return chars.toString();
            } catch (CharacterCodingException e) {
                throw new WireFormatException("body: invalid UTF-8 in `" + what + "`");
            }
        }

        void bin(String what) throws WireFormatException {
            int tag = u8(what);
            long length;
            if (tag == 0xc4) length = un(1, what);
            else if (tag == 0xc5) length = un(2, what);
            else if (tag == 0xc6) length = un(4, what);
            else throw expected("bytes", what, tag);
            span(length, what);
        }
    }
}

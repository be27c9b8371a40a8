package com.iiot.flink;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Base64;

/**
 * The decoder without Flink, for tests and checks: one base64 batch per line on stdin, one line
 * out per batch: {@code OK <readings>} followed by a line per reading in the order the format
 * emits them ({@code timestamp<TAB>factory<TAB>machine<TAB>sensor<TAB>metric<TAB>value<TAB>unit},
 * strings as the hex of their UTF-8 bytes, value as its IEEE-754 bits in hex), or
 * {@code REJECT <reason>}.
 */
public final class DecodeLines {
    private DecodeLines() {}

    public static void main(String[] args) throws Exception {
        BatchDecoder decoder = new BatchDecoder();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        PrintStream out = new PrintStream(System.out, false, "UTF-8");
        String line;
        while ((line = in.readLine()) != null) {
            byte[] payload = Base64.getDecoder().decode(line.trim());
            BatchDecoder.Columns columns;
            try {
                columns = decoder.decode(payload);
            } catch (BatchDecoder.WireFormatException e) {
                out.println("REJECT " + e.getMessage().replace('\n', ' '));
                continue;
            }
            int[] order = columns.timeOrder();
            out.println("OK " + order.length);
            for (int i : order) {
                byte[][] key = columns.seriesUtf8[columns.seriesIndex[i]];
                out.println(columns.timestamp[i] + "\t" + hex(key[0]) + "\t" + hex(key[1]) + "\t"
                        + hex(key[2]) + "\t" + hex(key[3]) + "\t"
                        + Long.toHexString(Double.doubleToRawLongBits(columns.value[i])) + "\t"
                        + hex(key[4]));
            }
        }
        out.flush();
    }

    private static String hex(byte[] bytes) {
        StringBuilder text = new StringBuilder(bytes.length * 2 + 1).append('x');
        for (byte b : bytes) {
            text.append(Character.forDigit((b >> 4) & 0xf, 16)).append(Character.forDigit(b & 0xf, 16));
        }
        return text.toString();
    }
}

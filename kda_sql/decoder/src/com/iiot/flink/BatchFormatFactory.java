package com.iiot.flink;

import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.DecodingFormat;
import org.apache.flink.table.connector.source.DynamicTableSource;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DeserializationFormatFactory;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.factories.FactoryUtil;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalType;
import org.apache.flink.table.types.logical.LogicalTypeRoot;
import org.apache.flink.table.types.logical.utils.LogicalTypeChecks;

/**
 * {@code 'format' = 'iiot-batch'}: each record is one compact batch (iiot.wire, version 1); the
 * table gets one row per reading, or one dead-letter row for a batch that fails its checks.
 *
 * <p>{@code 'iiot-batch.encoding'} is {@code raw} (the default: a Kinesis record's bytes) or
 * {@code base64} (one batch per line: the filesystem connector splits its files into lines).
 */
public final class BatchFormatFactory implements DeserializationFormatFactory {
    public static final String IDENTIFIER = "iiot-batch";
    public static final ConfigOption<String> ENCODING =
            ConfigOptions.key("encoding").stringType().defaultValue("raw")
                    .withDescription("raw (one batch per record) or base64 (one per line)");

    @Override
    public DecodingFormat<DeserializationSchema<RowData>> createDecodingFormat(
            DynamicTableFactory.Context context, ReadableConfig formatOptions) {
        FactoryUtil.validateFactoryOptions(this, formatOptions);
        String encoding = formatOptions.get(ENCODING);
        if (!encoding.equals("raw") && !encoding.equals("base64")) {
            throw new ValidationException(
                    IDENTIFIER + ".encoding must be raw or base64, got " + encoding);
        }
        boolean base64 = encoding.equals("base64");
        return new DecodingFormat<DeserializationSchema<RowData>>() {
            @Override
            public DeserializationSchema<RowData> createRuntimeDecoder(
                    DynamicTableSource.Context context, DataType physicalDataType) {
                List<String> names =
                        LogicalTypeChecks.getFieldNames(physicalDataType.getLogicalType());
                List<LogicalType> types = physicalDataType.getLogicalType().getChildren();
                for (int i = 0; i < names.size(); i++) {
                    int column = BatchDeserializationSchema.COLUMNS.indexOf(names.get(i));
                    if (column < 0) {
                        throw new ValidationException(IDENTIFIER + ": unknown column "
                                + names.get(i) + "; the format produces "
                                + BatchDeserializationSchema.COLUMNS);
                    }
                    LogicalTypeRoot root = BatchDeserializationSchema.ROOTS.get(column);
                    if (!types.get(i).is(root)) {
                        throw new ValidationException(IDENTIFIER + ": column " + names.get(i)
                                + " must be " + root + ", not " + types.get(i));
                    }
                }
                TypeInformation<RowData> type = context.createTypeInformation(physicalDataType);
                return new BatchDeserializationSchema(type, names, base64);
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        return Collections.emptySet();
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        Set<ConfigOption<?>> options = new HashSet<>();
        options.add(ENCODING);
        return options;
    }
}

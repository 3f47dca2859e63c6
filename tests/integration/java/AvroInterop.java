// Apache Avro's Java implementation (and Kafka's Java clients) on the other side of the guard,
// for tests/integration/test_avro_java_interop.py. Compiled by the test with javac against
// the jars `infra/avro/avro.sh` fetches from Maven Central; not part of the product.
//
// FULL_NAME may be FULL_NAME@N: the entity as it was with SCHEMAS_DIR/history/provenance.N.avsc.
//
//   schema   SCHEMAS_DIR FULL_NAME
//       prints the schema as Java parses it (Provenance inlined), for avro-tools --schema-file
//   fingerprint SCHEMAS_DIR
//       prints FULL_NAME <tab> parsingFingerprint64 <tab> the 10-byte single-object header
//   produce  SCHEMAS_DIR BOOTSTRAP TOPIC FULL_NAME=AVRO_JSON_LINES...
//       reads each record from Avro's JSON encoding, writes it with BinaryMessageEncoder
//       (single-object encoding) and sends it with a KafkaProducer, key = record_id
//   decode-topic SCHEMAS_DIR BOOTSTRAP TOPIC COUNT
//       reads COUNT messages from the start of TOPIC with a KafkaConsumer and decodes each with
//       BinaryMessageDecoder (a message of an earlier version read with today's schema); prints
//       FULL_NAME <tab> the record as JSON, one line per message
//   decode-hex SCHEMAS_DIR
//       the same for single-object messages given as hex lines on stdin
//
// A message that does not decode prints "ERROR <tab> ..." and makes the exit code 1.

import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class AvroInterop {
    private AvroInterop() {}

    /** The contract's schemas, parsed as Avro's Java users parse them: Provenance first.
     *  Then the schema history: each entity as it was with history/provenance.N.avsc, keyed
     *  FULL_NAME@N (the names lineage-guard gives them). */
    static Map<String, Schema> schemas(String dir) throws Exception {
        Map<String, Schema> byName = new LinkedHashMap<>();
        entities(dir, new File(dir, "provenance.avsc"), "", byName);
        File[] history = new File(dir, "history").listFiles((d, name) -> name.matches("provenance\\.\\d+\\.avsc"));
        if (history != null) {
            java.util.Arrays.sort(history);
            for (File file : history) {
                String version = file.getName().replaceAll("\\D", "");
                entities(dir, file, "@" + version, byName);
            }
        }
        return byName;
    }

    static void entities(String dir, File provenance, String suffix, Map<String, Schema> byName) throws Exception {
        Schema.Parser parser = new Schema.Parser();
        parser.parse(provenance);
        File[] entities = new File(dir, "crm").listFiles((d, name) -> name.endsWith(".avsc"));
        java.util.Arrays.sort(entities);
        for (File file : entities) {
            Schema schema = parser.parse(file);
            byName.put(schema.getFullName() + suffix, schema);
        }
    }

    static String fingerprint(Schema schema) throws Exception {
        return HexFormat.of().formatHex(SchemaNormalization.parsingFingerprint("CRC-64-AVRO", schema));
    }

    /** A BinaryMessageDecoder per schema, keyed by the fingerprint in its messages' header:
     *  a decoder resolves every known writer schema to its one read schema (today's; earlier
     *  versions added with addSchema, so their records are read with the fields added since
     *  at their defaults), so a message is read with the decoder of the schema it names (an
     *  unknown fingerprint: Java's error). */
    static Map<String, BinaryMessageDecoder<GenericRecord>> decoders(Map<String, Schema> schemas) throws Exception {
        Map<String, BinaryMessageDecoder<GenericRecord>> decoders = new LinkedHashMap<>();
        Map<String, BinaryMessageDecoder<GenericRecord>> byName = new LinkedHashMap<>();
        for (Map.Entry<String, Schema> entry : schemas.entrySet()) {
            Schema schema = entry.getValue();
            BinaryMessageDecoder<GenericRecord> decoder = byName.get(schema.getFullName());
            if (decoder == null) {
                decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
                byName.put(schema.getFullName(), decoder);
            } else {
                decoder.addSchema(schema);
            }
            decoders.put(fingerprint(schema), decoder);
        }
        return decoders;
    }

    /** Prints one decoded message; false when it did not decode. */
    static boolean printDecoded(Map<String, BinaryMessageDecoder<GenericRecord>> decoders, byte[] value, String where) {
        try {
            String named = value.length >= 10 ? HexFormat.of().formatHex(value, 2, 10) : "";
            BinaryMessageDecoder<GenericRecord> decoder =
                    decoders.getOrDefault(named, decoders.values().iterator().next());
            GenericRecord record = decoder.decode(value);
            System.out.println(record.getSchema().getFullName() + "\t" + GenericData.get().toString(record));
            return true;
        } catch (Exception e) {
            System.out.println("ERROR\t" + where + "\t" + e);
            return false;
        }
    }

    public static void main(String[] args) throws Exception {
        Map<String, Schema> schemas = schemas(args[1]);
        boolean ok = true;
        switch (args[0]) {
            case "schema" -> System.out.println(schemas.get(args[2]).toString());
            case "fingerprint" -> {
                for (Map.Entry<String, Schema> entry : schemas.entrySet()) {
                    // The bytes BinaryMessageEncoder writes after c3 01 (its V1 header).
                    Schema schema = entry.getValue();
                    System.out.println(entry.getKey() + "\t" + SchemaNormalization.parsingFingerprint64(schema)
                            + "\tc301" + fingerprint(schema));
                }
            }
            case "produce" -> ok = produce(schemas, args[2], args[3], List.of(args).subList(4, args.length));
            case "decode-topic" -> ok = decodeTopic(schemas, args[2], args[3], Integer.parseInt(args[4]));
            case "decode-hex" -> {
                Map<String, BinaryMessageDecoder<GenericRecord>> decoder = decoders(schemas);
                BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
                int line = 0;
                for (String hex; (hex = in.readLine()) != null; line++) {
                    ok &= printDecoded(decoder, HexFormat.of().parseHex(hex.strip()), "line " + line);
                }
            }
            default -> throw new IllegalArgumentException("unknown command " + args[0]);
        }
        System.out.flush();
        System.exit(ok ? 0 : 1);
    }

    static boolean produce(Map<String, Schema> schemas, String bootstrap, String topic, List<String> inputs)
            throws Exception {
        Properties config = new Properties();
        config.put("bootstrap.servers", bootstrap);
        config.put("acks", "all");
        config.put("key.serializer", ByteArraySerializer.class.getName());
        config.put("value.serializer", ByteArraySerializer.class.getName());
        int sent = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(config)) {
            for (String input : inputs) {
                String[] pair = input.split("=", 2);
                Schema schema = schemas.get(pair[0]);
                GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
                BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), schema);
                for (String json : Files.readAllLines(Path.of(pair[1]), StandardCharsets.UTF_8)) {
                    if (json.isBlank()) {
                        continue;
                    }
                    GenericRecord record = reader.read(null, DecoderFactory.get().jsonDecoder(schema, json));
                    byte[] key = record.get("record_id").toString().getBytes(StandardCharsets.UTF_8);
                    byte[] value = encoder.encode(record).array();
                    producer.send(new ProducerRecord<>(topic, key, value)).get();
                    sent++;
                }
            }
        }
        System.err.println("produced " + sent);
        return true;
    }

    static boolean decodeTopic(Map<String, Schema> schemas, String bootstrap, String topic, int count)
            throws Exception {
        Properties config = new Properties();
        config.put("bootstrap.servers", bootstrap);
        config.put("enable.auto.commit", "false");
        config.put("key.deserializer", ByteArrayDeserializer.class.getName());
        config.put("value.deserializer", ByteArrayDeserializer.class.getName());
        Map<String, BinaryMessageDecoder<GenericRecord>> decoder = decoders(schemas);
        boolean ok = true;
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(config)) {
            List<TopicPartition> partitions = new ArrayList<>();
            for (PartitionInfo info : consumer.partitionsFor(topic, Duration.ofSeconds(30))) {
                partitions.add(new TopicPartition(topic, info.partition()));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            int seen = 0;
            long deadline = System.currentTimeMillis() + 60_000;
            while (seen < count && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> message : consumer.poll(Duration.ofMillis(500))) {
                    ok &= printDecoded(decoder, message.value(), message.partition() + "@" + message.offset());
                    seen++;
                }
            }
            if (seen != count) {
                System.out.println("ERROR\ttopic\tread " + seen + " of " + count + " messages");
                ok = false;
            }
        }
        return ok;
    }
}

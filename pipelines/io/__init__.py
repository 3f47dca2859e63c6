"""Wire formats and IO: message framings (Confluent, single-object, raw Avro), Kafka through
confluent-kafka, and Avro container / JSON Lines files."""

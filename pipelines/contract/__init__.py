"""The provenance contract: Avro schemas, the flattened columns the suites check, the suites
(Great Expectations or compiled), the verdicts they give and the sink policies. Pure: no Beam,
no Kafka."""

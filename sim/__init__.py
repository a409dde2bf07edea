"""Test data and a broker to run against: the patient simulator, replay of real recordings, the embedded
Kafka-protocol broker. Used by the demo, training and the tests; the scoring path never imports it."""

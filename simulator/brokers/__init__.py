"""MQTT brokers the simulator runs: the embedded amqtt broker for demos, Mosquitto processes for tests and benchmarks."""

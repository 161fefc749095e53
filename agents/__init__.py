"""Robot side: client, control loop, simulated robot, protocol bridges. Needs only numpy, grpcio, protobuf, pyzmq, msgpack, websockets."""

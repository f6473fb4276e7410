"""STUN, TURN and ICE: the NAT traversal protocol cores, sans-I/O."""

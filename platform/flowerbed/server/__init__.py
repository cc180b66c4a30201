"""The server side: the Flower ServerApp, its round loop, strategy and checkpoints."""

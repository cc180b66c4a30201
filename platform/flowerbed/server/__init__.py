"""The server side: the Flower ServerApp, its round loop, the aggregation pipeline
(admission, combiners, outer rules) and checkpoints."""

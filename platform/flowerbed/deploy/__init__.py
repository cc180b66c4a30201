"""Multi-node deployment on Flower's Deployment Engine: credentials, run setup, shards."""

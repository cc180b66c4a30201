"""Multi-node deployment on Flower's Deployment Engine: credentials, and institutions' shards."""

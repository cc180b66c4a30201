"""The client side: the Flower ClientApp and the local trainer it drives."""

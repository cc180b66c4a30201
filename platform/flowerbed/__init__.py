"""flowerbed: continual, federated, differentially private training of causal LMs."""

"""Console entry points (`flowerbed ...`)."""

"""What finished runs say, read from their directories alone (gptlab.compare): results (the
runs' records and tables, best first, their curves), seeds (a setting's seeds together: the
confidence interval of their mean, a difference from a baseline with Welch's test) and scaling
(laws fitted through the runs' losses, IsoFLOP optima)."""

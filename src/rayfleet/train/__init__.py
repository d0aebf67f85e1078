"""Training and tuning workloads (Ray Train / Tune) and what the client needs to launch them."""

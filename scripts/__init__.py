"""The user tools (predict, export, flops, plot_log, checkpoint_meta); measuring tools: scripts/bench/."""

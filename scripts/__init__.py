"""The user tools (predict, export, flops, plot_log); measuring tools: scripts/bench/."""

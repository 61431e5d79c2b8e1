"""DeepSpeed's module path for the CSV monitor (`deepspeed.monitor.csv_monitor.csvMonitor`)."""

from zerospeed.monitor.csv import CSVMonitor, csvMonitor

__all__ = ["CSVMonitor", "csvMonitor"]

"""DL/T 645-2007 electricity meters (RS-485, or through a serial-to-TCP transparent gateway)."""

/* The vmdevd D-Bus contract, as far as the benchmark tools need it. */
#pragma once

#define VMDEVD_BUS_NAME "org.example.dbustest"
#define VMDEVD_OBJECT_PATH "/org/example/dbustest"
#define VMDEVD_INTERFACE "org.example.dbustest.Module"

/* Device types TestMethod accepts, in the order of the design's table. */
#define VMDEVD_DEVICE_TYPES { "pci", "usb", "scsi", "mdev", "disk", "interface", "alias" }

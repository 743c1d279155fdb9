/* demo: the echo guest that also powers off when the ACPI power button is
 * pressed, as an OS does when its pod is deleted: the demo VM of
 * manifests/ (the echo guest itself ignores the button, which tests of
 * vmpod's deadline rely on). */
.set POWER_BUTTON, 1
.include "echo.S"

/* The parts of otel_apm._native: one init function per file, called from module.c. */
#ifndef OTEL_APM_NATIVE_H
#define OTEL_APM_NATIVE_H

#include <Python.h>

int apm_intake_init(PyObject *module); /* intake.c: Intake, the processor's common span hooks */

#endif
